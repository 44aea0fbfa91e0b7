"""FaceTrust command line: thin doors into detector/, training/ and serving/."""
