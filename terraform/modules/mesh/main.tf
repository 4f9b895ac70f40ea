# Every pair of clusters once, keyed by "DIALER/ACCEPTOR" so that adding a cluster adds links
# and leaves the others alone. The cluster listed first dials; reordering the list replaces the
# links whose direction changes.
locals {
  pairs = merge({}, [
    for i in range(length(var.clusters)) : {
      for j in range(i + 1, length(var.clusters)) :
      "${var.clusters[i].name}/${var.clusters[j].name}" => {
        dialer   = var.clusters[i].name
        acceptor = var.clusters[j].name
        address  = var.clusters[j].address
      }
    }
  ]...)
}

resource "strait_link" "pair" {
  for_each = local.pairs

  dialer    = each.value.dialer
  acceptor  = each.value.acceptor
  address   = each.value.address == "" ? null : each.value.address
  token_ttl = var.token_ttl
}
