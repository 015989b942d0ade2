"""Registered tensor2tensor problems."""
