"""Use cases: what each API call does, over the store, in one transaction each."""
