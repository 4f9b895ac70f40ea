terraform {
  required_version = ">= 1.0"

  required_providers {
    strait = {
      source  = "strait.dev/strait/strait"
      version = ">= 0.1.0"
    }
  }
}
