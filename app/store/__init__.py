"""The store: every database operation of the service (see ``repository``)."""
