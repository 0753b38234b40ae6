"""Local stand-ins for Gemini, Cloud Storage and BigQuery, spoken to by the real client libraries."""
