"""Real-name verification (实名认证) and the identity documents it rests on."""
