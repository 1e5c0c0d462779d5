"""Side-by-side benchmarks against the peers' own code (auto-circuit, EAP-IG, CD_Circuit, TransformerLens 2);
`harness` is the entry point (`python -m benchmarks.peers`), `worker` runs in `.venv-peers`."""
