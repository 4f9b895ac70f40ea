variable "strait_config" {
  description = "The strait contexts file naming the clusters' gateways (what `strait gateway init` and `strait context add` write); \"\" for the provider's default ($STRAIT_CONFIG, then ~/.strait/config)."
  type        = string
  default     = ""
}

variable "clusters" {
  description = "The contexts of the clusters to link, every pair once."
  type        = list(string)

  validation {
    condition     = length(var.clusters) >= 2
    error_message = "Give at least two clusters to link."
  }
}
