"""Real loopback servers (OpenStack Swift all-in-one, moto S3, Docker registry) for tests."""
