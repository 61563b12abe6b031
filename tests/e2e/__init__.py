"""End-to-end tests: real container runtimes drive the plugin inside namespaces of our own."""
