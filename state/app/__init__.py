"""The application: the API server, its metrics, and the production `breakwater` commands."""
