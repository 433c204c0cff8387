"""The MXNet multitask trainer that runs in the job image."""
