"""The job store: its protocol and rules, one SQL store and ledger, and one dialect per database.

`protocol` says what a store does; `rules` what a transition does to a job;
`sql` and `ledger` do it in SQL, once, through `database`'s interface;
`sqlite` and `postgres` each supply a connection, a session and a `Dialect`
(every difference between the two); `schema` is the migrations, written once;
`open` picks the store `BREAKWATER_DB` names.
"""
