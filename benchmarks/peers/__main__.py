import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: TransformerLens's and the peers' progress bars

from benchmarks.peers.harness import main  # noqa: E402

main()
