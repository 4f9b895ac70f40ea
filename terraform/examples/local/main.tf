# Gateways running on this machine (no cloud): `strait gateway init` gave each a context in
# the contexts file, and their advertised addresses are dialable as they are.
provider "strait" {
  config_path = var.strait_config == "" ? null : var.strait_config
}

module "mesh" {
  source = "../../modules/mesh"

  clusters = [for name in var.clusters : { name = name, address = "" }]
}
