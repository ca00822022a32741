"""Support code for the tests: servers, fixtures, the fault proxy, the contract suite."""
