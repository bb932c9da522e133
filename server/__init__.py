"""The fleet server: agents stream in (:mod:`.hub`), clients ask (:mod:`.fleet`), and
everything lasts in a store behind one interface (:mod:`.store`)."""
