"""Developer tools: synthetic scene generation and offline-detector evaluation. Not deployed."""
