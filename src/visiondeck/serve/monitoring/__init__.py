"""What watches the served predictions: observers, the drift monitor, the upload archive."""
