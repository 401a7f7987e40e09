"""HTTP routes: thin handlers that parse, call the runtime, and shape the response."""
