"""What a signature or an encryption layer means, and whom to believe.

What this package promises:

- **S/MIME opened with bounds** (``smime``, ``asn1``): decryption with the configured key
  store, signatures checked on BER/DER read iteratively, with limits on depth and size.
- **"Verified" means trusted**: a signature's integrity, its signer's chain to a trusted
  root (``certificates``), the part it covers and the signer-versus-From match are reported
  separately, and only all together make ``verified``.
- **A bad signature or key is the message's warning or failure**, never the batch's.

Import the submodules; this package itself imports nothing.
"""
