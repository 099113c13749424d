"""The one-command demo (``dermogaze demo``) and the report it writes."""
