"""The TOTP second factor (RFC 6238): secrets, codes, recovery codes and MFA tickets."""
