# The serverless stack: an S3 bucket for Bundles, the Lambda function (container image from
# ECR, deploy/lambda/Dockerfile) and an API Gateway HTTP API in front of it.
# Not run here: `terraform validate` needs the AWS provider, which this project's machines
# cannot download; deploy/lint.sh parses the HCL and checks its references instead.
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = var.tags
  }
}
