variable "clusters" {
  description = "The clusters to link, each once with every other: name is the cluster's strait context (by convention its cluster name), address the address its gateway is dialed at (a gateway module's gateway_address), or \"\" for the address the gateway advertises. Of each pair, the cluster listed first dials."
  type = list(object({
    name    = string
    address = string
  }))

  validation {
    condition     = length(var.clusters) == length(distinct([for cluster in var.clusters : cluster.name]))
    error_message = "Each cluster may be listed once: two entries of clusters have the same name."
  }

  validation {
    condition     = alltrue([for cluster in var.clusters : length(trimspace(cluster.name)) > 0])
    error_message = "Every cluster needs a name: the strait context of the cluster."
  }

  validation {
    condition = alltrue([
      for cluster in var.clusters :
      cluster.address == "" || can(regex("^([^:\\[\\]]+|\\[[0-9a-fA-F:.]+\\]):[0-9]{1,5}$", cluster.address))
    ])
    error_message = "An address is host:port (or [IPv6]:port), such as a gateway module's gateway_address, or \"\"."
  }
}

variable "token_ttl" {
  description = "How long each join token waits for its first use. A token is used once, while its link is made, and never stored."
  type        = string
  default     = "10m"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)?$", var.token_ttl))
    error_message = "The token_ttl is a duration such as 90s, 10m, 1.5h or a number of seconds."
  }
}
