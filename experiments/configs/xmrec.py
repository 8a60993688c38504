r"""XMRec Electronics (5-core) markets ca, de, fr, uk; titles when metadata files are given.

The ratings in ../shared/data carry no titles, so by default only the ID-based methods run
(`local`, `fedavg_id` over the shared ASIN vocabulary); the text methods say why they are
skipped. With the XMRec release's metadata (titles) downloaded to META_DIR:

  python -m experiments.main --config=experiments/configs/xmrec.py --workdir=workdir/xmrec
  HF_HUB_OFFLINE=1 python -m experiments.main --config=experiments/configs/xmrec.py \
      --workdir=workdir/xmrec_text --config.data.metadata_path=META_DIR \
      --config.data.semantics=text
"""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.data.format = "xmrec"
    config.data.path = "../shared/data/xmrec_electronics_5core"
    config.data.markets = "ca,de,fr,uk"
    config.data.max_len = 20  # users have ~9.5 interactions
    config.num_rounds = 60
    config.finetune.max_epochs = 30
    return config
