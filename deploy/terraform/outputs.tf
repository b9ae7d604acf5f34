output "api_url" {
  description = "Base URL: POST $api_url/predict with an image, GET $api_url/health"
  value       = aws_apigatewayv2_stage.default.invoke_url
}

output "bundle_bucket" {
  description = "Upload the Bundle here: aws s3 sync runs/NAME/bundle s3://BUCKET/PREFIX"
  value       = aws_s3_bucket.bundles.bucket
}

output "bundle_uri" {
  description = "What the function reads (VISIONDECK_BUNDLE_S3)"
  value       = "s3://${aws_s3_bucket.bundles.bucket}/${local.bundle_prefix}"
}

output "function_name" {
  description = "The Lambda function (aws lambda update-function-code --image-uri ... to roll out)"
  value       = aws_lambda_function.predict.function_name
}
