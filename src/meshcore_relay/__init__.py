"""`meshcore-relay`: the relay executable, assembled from the meshcore library."""
