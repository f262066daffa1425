"""tierroute: route each LLM request to the cheapest model tier that will answer it well."""
