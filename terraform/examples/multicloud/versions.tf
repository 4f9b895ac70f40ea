terraform {
  required_version = ">= 1.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 3.0"
    }
    # 2.x: the `kubernetes` block of the provider settings below became an attribute in 3.0.
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.9, < 3.0"
    }
    strait = {
      source  = "strait.dev/strait/strait"
      version = ">= 0.1"
    }
  }
}
