"""Budget search: choose each tensor's storage spec so the artifact scores best under a byte cap."""
