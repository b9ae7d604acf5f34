locals {
  function_name = "${var.name}-predict"
  bundle_prefix = trim(var.bundle_prefix, "/")
}

# ----------------------------------------------------------------------- Bundle bucket

resource "aws_s3_bucket" "bundles" {
  bucket = var.bundle_bucket_name
}

resource "aws_s3_bucket_public_access_block" "bundles" {
  bucket                  = aws_s3_bucket.bundles.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "bundles" {
  bucket = aws_s3_bucket.bundles.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# ------------------------------------------------------------------ IAM: least privilege

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "predict" {
  name               = "${local.function_name}-role"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
}

# the handler reads bundle.json and one ONNX file under the prefix: GetObject only, there
data "aws_iam_policy_document" "predict" {
  statement {
    sid       = "ReadTheServedBundle"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.bundles.arn}/${local.bundle_prefix}/*"]
  }
  statement {
    sid       = "WriteItsOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.predict.arn}:*"]
  }
}

resource "aws_iam_role_policy" "predict" {
  name   = "${local.function_name}-policy"
  role   = aws_iam_role.predict.id
  policy = data.aws_iam_policy_document.predict.json
}

# ------------------------------------------------------------------------------ Lambda

resource "aws_cloudwatch_log_group" "predict" {
  name              = "/aws/lambda/${local.function_name}"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "predict" {
  function_name                  = local.function_name
  role                           = aws_iam_role.predict.arn
  package_type                   = "Image"
  image_uri                      = var.image_uri
  architectures                  = ["x86_64"]
  memory_size                    = var.memory_mb
  timeout                        = var.timeout_s
  reserved_concurrent_executions = var.reserved_concurrency

  ephemeral_storage {
    size = 1024 # MB of /tmp: the Bundle's ONNX file is downloaded there once per cold start
  }

  environment {
    variables = {
      VISIONDECK_BUNDLE_S3        = "s3://${aws_s3_bucket.bundles.bucket}/${local.bundle_prefix}"
      VISIONDECK_VARIANT          = var.variant
      VISIONDECK_MAX_UPLOAD_BYTES = tostring(var.max_upload_bytes)
    }
  }

  depends_on = [aws_iam_role_policy.predict, aws_cloudwatch_log_group.predict]
}
