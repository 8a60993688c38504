"""Stage 2, local fine-tuning: its settings (config), the compiled epoch (epoch) and the loop
over epochs with early stopping per market (loop)."""
