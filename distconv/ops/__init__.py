"""One module per operation family; each builds a lazy Dask graph and computes nothing."""
