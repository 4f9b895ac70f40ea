output "links" {
  description = "Each link, keyed DIALER/ACCEPTOR: the clusters it joins, the address the dialer dials and the peering's state when last read."
  value = {
    for key, link in strait_link.pair : key => {
      dialer_cluster   = link.dialer_cluster
      acceptor_cluster = link.acceptor_cluster
      peer_address     = link.peer_address
      state            = link.state
    }
  }
}

output "link_count" {
  description = "How many links the mesh has: n(n-1)/2 for n clusters."
  value       = length(strait_link.pair)
}
