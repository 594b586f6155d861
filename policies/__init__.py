"""Who may see what: policy model and store, decisions, masking and consent."""
