"""The admin console (`meter console`): server-rendered pages over the worker API and
the ledger sink, in English and Greek (issue 22)."""
