"""`meter ledger-sink`: the ledger, recharge requests and their outcomes in SQL.

Layers, none of which imports Faust: `store` (the schema, exactly-once writes and the
queries), `service` (the Kafka consumer that feeds the store), `http` (the query API).
"""
