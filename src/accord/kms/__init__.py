"""Key management: the domain identity (key pair, certificate), tokens, and secrets at rest."""
