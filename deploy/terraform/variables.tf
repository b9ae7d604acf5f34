variable "region" {
  description = "AWS region of the stack"
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Prefix of every resource name"
  type        = string
  default     = "visiondeck"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: lower-case letters, digits and dashes, 2 to 31 characters."
  }
}

variable "image_uri" {
  description = "ECR image of deploy/lambda/Dockerfile (--target lambda), e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/visiondeck-lambda:0.1.0"
  type        = string
}

variable "bundle_bucket_name" {
  description = "Name of the S3 bucket that holds Bundles (globally unique)"
  type        = string
}

variable "bundle_prefix" {
  description = "Key prefix of the served Bundle in the bucket (bundle.json and model.onnx under it)"
  type        = string
  default     = "bundles/current"
}

variable "variant" {
  description = "Which ONNX model of the Bundle to serve: auto (bundle.json's default_variant), fp32 or int8"
  type        = string
  default     = "auto"
  validation {
    condition     = contains(["auto", "fp32", "int8"], var.variant)
    error_message = "variant must be auto, fp32 or int8."
  }
}

variable "memory_mb" {
  description = "Lambda memory (CPU grows with it; 1769 MB is one full vCPU)"
  type        = number
  default     = 1769
}

variable "timeout_s" {
  description = "Lambda timeout; a cold start downloads the Bundle and opens ONNX Runtime"
  type        = number
  default     = 30
}

variable "max_upload_bytes" {
  description = "Largest image accepted (a synchronous Lambda payload is at most 6 MB, base64 included)"
  type        = number
  default     = 4194304
}

variable "reserved_concurrency" {
  description = "Cap on concurrent executions (-1: no reservation)"
  type        = number
  default     = -1
}

variable "throttle_rate" {
  description = "API Gateway steady-state requests per second"
  type        = number
  default     = 50
}

variable "throttle_burst" {
  description = "API Gateway burst"
  type        = number
  default     = 100
}

variable "log_retention_days" {
  description = "CloudWatch retention of the function's and the API's logs"
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags on every resource"
  type        = map(string)
  default     = { project = "visiondeck" }
}
