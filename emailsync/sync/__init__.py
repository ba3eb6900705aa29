"""One run: the cycle, the calls to the backend and what their answers mean."""
