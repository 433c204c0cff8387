"""The MXNet multitask trainer that runs in the job image: ``python -m aidi_trainer`` (docs/trainer.md)."""
