# One mesh over three clouds: a gateway in an existing EKS, GKE and AKS cluster, each reachable
# from the other two only, and every pair linked.

provider "aws" {
  region = var.aws_region
}

provider "google" {
  project = var.gcp_project
}

provider "azurerm" {
  features {}
  subscription_id = var.azure_subscription_id
}

# Each cluster's API, for its Helm release.

data "aws_eks_cluster" "aws" {
  name = var.aws_cluster_name
}

data "aws_eks_cluster_auth" "aws" {
  name = var.aws_cluster_name
}

provider "helm" {
  alias = "aws"
  kubernetes {
    host                   = data.aws_eks_cluster.aws.endpoint
    cluster_ca_certificate = base64decode(data.aws_eks_cluster.aws.certificate_authority[0].data)
    token                  = data.aws_eks_cluster_auth.aws.token
  }
}

data "google_client_config" "current" {}

data "google_container_cluster" "gcp" {
  name     = var.gcp_cluster_name
  location = var.gcp_location
}

provider "helm" {
  alias = "gcp"
  kubernetes {
    host                   = "https://${data.google_container_cluster.gcp.endpoint}"
    cluster_ca_certificate = base64decode(data.google_container_cluster.gcp.master_auth[0].cluster_ca_certificate)
    token                  = data.google_client_config.current.access_token
  }
}

data "azurerm_kubernetes_cluster" "azure" {
  name                = var.azure_cluster_name
  resource_group_name = var.azure_resource_group_name
}

provider "helm" {
  alias = "azure"
  kubernetes {
    host                   = data.azurerm_kubernetes_cluster.azure.kube_config[0].host
    client_certificate     = base64decode(data.azurerm_kubernetes_cluster.azure.kube_config[0].client_certificate)
    client_key             = base64decode(data.azurerm_kubernetes_cluster.azure.kube_config[0].client_key)
    cluster_ca_certificate = base64decode(data.azurerm_kubernetes_cluster.azure.kube_config[0].cluster_ca_certificate)
  }
}

# The links are made through each cluster's context in this file (`strait context add`).
provider "strait" {
  config_path = var.strait_config_path
}

# The gateways. Each one's port is open to the other two clusters' egress addresses.

module "aws" {
  source = "../../modules/gateway-aws"
  providers = {
    aws  = aws
    helm = helm.aws
  }

  cluster_name                 = var.aws_cluster_name
  public_subnet_ids            = var.aws_public_subnet_ids
  node_autoscaling_group_names = var.aws_node_autoscaling_group_names
  peer_cidrs                   = concat(var.gcp_egress_cidrs, var.azure_egress_cidrs)
  trust_domain                 = var.trust_domain
}

module "gcp" {
  source = "../../modules/gateway-gcp"
  providers = {
    google = google
    helm   = helm.gcp
  }

  cluster_name = var.gcp_cluster_name
  location     = var.gcp_location
  project      = var.gcp_project
  node_tags    = var.gcp_node_tags
  peer_cidrs   = concat(var.aws_egress_cidrs, var.azure_egress_cidrs)
  trust_domain = var.trust_domain
}

module "azure" {
  source = "../../modules/gateway-azure"
  providers = {
    azurerm = azurerm
    helm    = helm.azure
  }

  cluster_name                               = var.azure_cluster_name
  resource_group_name                        = var.azure_resource_group_name
  network_security_group_name                = var.azure_network_security_group_name
  network_security_group_resource_group_name = var.azure_network_security_group_resource_group_name
  peer_cidrs                                 = concat(var.aws_egress_cidrs, var.gcp_egress_cidrs)
  trust_domain                               = var.trust_domain
}

# Every pair of clusters linked, each dialling the others at their load balancers.
module "mesh" {
  source = "../../modules/mesh"
  providers = {
    strait = strait
  }

  clusters = [
    { name = module.aws.cluster_name, address = module.aws.gateway_address },
    { name = module.gcp.cluster_name, address = module.gcp.gateway_address },
    { name = module.azure.cluster_name, address = module.azure.gateway_address },
  ]
}
