"""`meshcore-peer`: the peer executable, assembled from the meshcore library."""
