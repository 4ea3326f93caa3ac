"""gRPC servicers: thin layers that validate, call a service object and map the result."""
