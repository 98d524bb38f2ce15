"""Pure core: consumption CRDTs for distributed rate limiting (standard library only)."""
