"""One message's bytes into saved files: parsing, decoding, naming, laying out.

What this package promises:

- **Streaming**: a saved original is read in blocks (``mime``) and each part's decoded body
  goes to a file as it is read; memory does not grow with the message.
- **Bounded work on hostile input**: headers, parameters, parts, nesting, names, decoded
  and written bytes all have caps (``headers``, ``mime``, ``layout``, ``tnef``), and time is
  linear in the message's size whatever its structure.
- **Never raises for malformed mail**: what can be saved is saved, the original is kept,
  and a warning on the message says what was not.
- **Safe names**: a file name a message claims becomes one plain, unique path component
  (``filenames``); text is UTF-8 whatever its label says (``charsets``).

Nothing here talks to a server or knows where the folder will be published. Import the
submodules; this package itself imports nothing.
"""
