"""The workstation CLIs: `aidi`, `hitc` and `traincli`. Each command maps its arguments onto a library call."""
