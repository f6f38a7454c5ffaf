"""The CDS XMatch engine: upload, the HTTP exchange, the answer and its checks."""
