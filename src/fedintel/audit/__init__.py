"""Audits of a trained run: what an attacker could learn from its adapters (membership inference)."""
