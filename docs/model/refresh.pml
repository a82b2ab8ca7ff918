/*
 * refresh.pml -- a model of authpool's token-refresh protocol, checked with SPIN.
 *
 * Run it with `bash docs/model/check.sh` (see README.md next to this file).
 *
 * ---------------------------------------------------------------------------------------------
 * Promela in five minutes, for Python readers
 * ---------------------------------------------------------------------------------------------
 *  - Global variables are shared by every process; `byte` is an unsigned 8-bit int, `bool` a
 *    flag. `proctype` is a process body; `active [N] proctype` starts N copies at time zero.
 *  - A model is a set of processes whose statements interleave in EVERY possible order. SPIN
 *    (the model checker) explores all of those orders and reports the first one that breaks an
 *    `assert`, or that ends with a process stuck somewhere it should not stop (a deadlock).
 *  - `if :: a -> x :: b -> y fi` picks ANY branch whose first statement (its "guard") is true;
 *    when several are true the choice is nondeterministic and SPIN tries all of them. A guard
 *    that is false blocks the branch; when no branch is possible the process waits.
 *    `do ... od` is the same as a loop; `break` leaves it; `else` is taken when no guard is true.
 *  - A bare expression used as a statement, e.g. `(lock == 0)`, WAITS until it is true.
 *  - `atomic { ... }` runs its statements as one indivisible step (no other process runs in
 *    between). We use it for things that really are atomic: one update of pool.json under the
 *    store lock, one write to the keyring, taking a file lock.
 *  - `{ body } unless { cond }`: as soon as `cond` becomes true the process abandons `body`
 *    wherever it is. We use it for SIGKILL: a crash can hit between any two steps.
 *  - `#ifdef X` is the C preprocessor: `spin -DX` builds a variant (we use it for mutants).
 *  - `goto label` jumps, like a structured `continue`/early `return` in Python.
 *
 * The variables in the "ghosts" section are bookkeeping for the properties: they record facts
 * about the run (e.g. "a rotation was lost because its process was killed") that the real code
 * cannot see, so the assertions can state what must be true. Ghosts never influence a decision
 * the protocol makes.
 *
 * ---------------------------------------------------------------------------------------------
 * What is modelled
 * ---------------------------------------------------------------------------------------------
 * One account, N client processes (N = 2 or 3) each doing up to ROUNDS refreshes, the metadata
 * store (pool.json: generation, journal entry, needs-reauth flag), the secret store (keyring:
 * the current refresh token), the per-account flock, the network (requests in flight), and the
 * provider's token endpoint (rotating refresh tokens, reuse detection). Refresh tokens are
 * numbered: rt_1 is the one from the login, each rotation issues the next number.
 *
 * The environment may, at any moment:
 *  - SIGKILL a process (power loss, OOM killer; at most CRASHES per run): it stops forever, the
 *    OS releases its flock, its local state (a new token received but not stored yet) is lost,
 *    what it wrote to the stores stays, and a request it already sent may still reach the
 *    endpoint later (the bytes were on the wire). Only the lock holder is killed in the model:
 *    a process killed while waiting for the lock or between refreshes holds nothing and has
 *    nothing in flight that matters, so that is the same as it simply stopping (below);
 *  - deliver requests late and out of order: the endpoint handles requests in flight in any
 *    order, so a killed process's request may be handled after its successor's;
 *  - answer a transient 5xx instead of handling the request (the provider did nothing);
 *  - make a client's token request time out before an answer arrives: the client cannot tell
 *    whether the provider rotated; the request may still be handled later, its answer is lost.
 *    (5xx answers and timeouts together: at most FAULTS per run);
 *  - send SIGINT/SIGTERM (or the caller's timeout/cancellation): the refresh runs in a worker
 *    thread that is not interrupted and the exit waits for it, so the only effect is that the
 *    process starts no new refresh and exits.
 *
 * Properties. Each assertion is tagged with the property it checks, and -DONLY=<n> keeps only
 * property n, so that a mutant demonstrably breaks the property it is meant to break.
 *  P1 No reuse unless a rotation was lost: the endpoint never receives an already-used refresh
 *     token unless, earlier, it issued a new token that can never reach the keyring because the
 *     process that asked for it was SIGKILLed between sending and storing, or gave up waiting
 *     for the answer (timeout). (The brief says "unless a process crashed between sending and
 *     storing"; this is stricter -- the crash must actually have cost a rotation -- and also
 *     admits timeouts, which lose a rotation the same way.)
 *  P2 No lost rotation unless killed/timed out: at every quiescent point (lock released, lock
 *     holder killed, end of the run) the keyring holds the newest refresh token the endpoint
 *     issued -- unless a rotation was lost as in P1.
 *  P3 Every revocation is explained: needs-reauth is only marked on a login that really is
 *     revoked, and the mark can say why: the process found a journal entry whose owner was
 *     killed or whose call had an unknown outcome. And at every quiescent point, a revoked
 *     login is either marked already or the journal holds such an entry (so the next refresh
 *     will explain it): a revocation is never left without its explanation.
 *  P4 Mutual exclusion and no deadlock: at most one process is inside the locked section, and
 *     no run ends with a process stuck (SPIN's "invalid end state" check).
 *  P5 Generation and secret agree: at every quiescent point
 *     gen + (kills that hit between step 9 and step 10) == the number of the stored token,
 *     i.e. gen moves exactly once per stored rotation; a journal entry always names the
 *     current generation.
 *  P6 Single flight: a process calls the token endpoint only while the generation it saw
 *     before deciding to refresh is still current (nobody rotated in between).
 *  P7 (only with -DCHECK_BLAME; known NOT to hold, see README "Findings") the process that a
 *     needs-reauth explanation names is one whose rotation was actually lost.
 */

#ifndef N
#define N 3                 /* client processes: 2 or 3 */
#endif
#ifndef ROUNDS
#define ROUNDS 2            /* refreshes each process attempts */
#endif
#ifndef CRASHES
#define CRASHES 2           /* SIGKILLs the environment may deliver in one run */
#endif
#ifndef FAULTS
#define FAULTS 2            /* transient failures (5xx answers + request timeouts) per run */
#endif
#ifndef ONLY
#define ONLY 0              /* 0: check every property; n: check only property Pn */
#endif

#define ON(p) (ONLY == 0 || ONLY == p)

/* The refresh token a process loaded along with its generation only matters to the mutant
 * CACHED_TOKEN; elsewhere it is not tracked (fewer states, same behaviour). */
#ifdef CACHED_TOKEN
#define REMEMBER(x) mytok = x
#else
#define REMEMBER(x) skip
#endif

/* (check.sh passes these bounds explicitly; the defaults above are its N=3 run.) */

/* Property tags: constants that only make a failed assertion print which property it
 * belongs to, e.g. "assertion violated ( !(P1_no_reuse_unless_rotation_lost)||lost)".
 * `hidden` keeps them out of the explored state; a breadth-first search (check.sh --trail,
 * which looks for the shortest counterexample) does not allow hidden variables. */
#ifdef SHORTEST
#define TAG byte
#else
#define TAG hidden byte
#endif
TAG P1_no_reuse_unless_rotation_lost = ON(1);
TAG P2_no_lost_rotation_unless_killed = ON(2);
TAG P3_every_revocation_explained = ON(3);
TAG P4_mutual_exclusion = ON(4);
TAG P5_generation_matches_secret = ON(5);
TAG P6_single_flight = ON(6);
TAG P7_blame_names_the_loser = ON(7);   /* only with -DCHECK_BLAME */

/* answers a client can get back from its token request */
#define A_NONE     0        /* nothing yet */
#define A_NEW      1        /* 200: new tokens (a new refresh token) */
#define A_INVALID  2        /* 400 invalid_grant */
#define A_5XX      3        /* transient server error; the provider did nothing */

/* where a client is between step 9 and step 10 (for the crash bookkeeping) */
#define IDLE       0
#define STORED     1        /* new refresh token in the keyring (step 9), gen not yet bumped */
#define BUMPED     2        /* mutant GEN_BEFORE_SECRET only: gen bumped, token not yet stored */

/* ---- metadata store: pool.json (every update is atomic, under the store lock) ---- */
byte gen = 1;               /* secret generation: +1 on every stored rotation */
byte j_owner = 0;           /* refresh journal: 0 = no entry, else owner pid + 1 */
byte j_from = 0;            /*   the generation the owner started from */
bool j_unknown = false;     /*   the owner's call timed out: outcome unknown */
bool needs_reauth = false;  /* the account is marked needs-reauth */

/* ---- secret store: the OS keyring (writes are atomic) ---- */
byte secret = 1;            /* number of the stored refresh token (rt_1 from the login) */

/* ---- per-account refresh lock: flock, released by the OS when its holder dies ---- */
byte lock = 0;              /* 0 = free, else holder pid + 1 */

/* ---- the provider's token endpoint ---- */
byte issued = 1;            /* newest refresh token issued; every older one is used */
bool revoked = false;       /* reuse detected: the whole login is dead */

/* ---- the network: one request slot and one answer slot per client ---- */
byte inflight[N];           /* refresh token of p's request in flight, 0 = none */
byte ans[N];                /* answer waiting for p (A_*) */
byte ans_tok[N];            /* the new refresh token in an A_NEW answer */
bool abandoned[N];          /* p timed out waiting: an answer to it is thrown away */

/* ---- the processes' fate ---- */
bool running[N] = true;     /* has not finished yet */
bool dead[N];               /* SIGKILLed */
bool gone[N];               /* mutant SIGNAL_ABORTS: left in the middle of a refresh */
byte crashes = 0;
byte done = 0;              /* clients that finished (normally or killed) */
byte faults = 0;            /* 5xx answers and timeouts so far */

/* ---- ghosts (bookkeeping for the properties, invisible to the protocol) ---- */
bool lost = false;          /* the endpoint issued a token that can never be stored because
                               its requester was killed or had timed out */
#ifdef CHECK_BLAME
bool lost_by[N];            /* ... and whose requester that was (only for P7) */
#define LOST_BY(p) lost_by[p] = true
#else
#define LOST_BY(p) skip
#endif
bool holding_new[N];        /* p has a new refresh token in hand that is not stored yet */
bool explained[N];          /* at step 4, p found a journal entry whose owner was killed or
                               whose call had an unknown outcome */
byte incs = 0;              /* processes inside the locked section */
byte missed_bumps = 0;      /* kills that hit between step 9 (store) and step 10 (bump) */

/* The checks made at every quiescent point: a lock release, the death of the lock holder,
 * and the end of the run (every client finished, nothing left on the wire).
 *  P2: the keyring holds the newest issued refresh token, unless a rotation was lost.
 *  P3: a revoked login is already marked needs-reauth (the mark itself is checked where it is
 *      made), or the journal holds the entry that will explain it to the next refresh.
 *  P5: gen moved exactly once per stored rotation. */
#define ENTRY_EXPLAINS (j_owner != 0 && (j_unknown || dead[j_owner - 1]))
#define QUIESCENT_CHECKS \
    assert(!P2_no_lost_rotation_unless_killed || secret == issued || lost); \
    assert(!P3_every_revocation_explained || !revoked || needs_reauth || ENTRY_EXPLAINS); \
    assert(!P5_generation_matches_secret || gen + missed_bumps == secret)

/* =============================================================================================
 * A client process: repeatedly refreshes the one account, steps 1-11 of the protocol.
 * ============================================================================================= */
active [N] proctype client()
{
    byte me = _pid;         /* 0 .. N-1 (clients are declared first, so they get pids 0..N-1) */
    byte seen = 1;          /* the generation its current token came from */
    byte mytok = 1;         /* the refresh token it loaded along with it (only CACHED_TOKEN
                               tracks it: the real code re-reads the keyring, step 3) */
    byte rounds = 0;
    byte tok;               /* refresh token presented to the endpoint */
    byte newtok;
    byte f_owner;           /* the journal entry found at step 4 ... */
    byte f_from;
    bool f_unknown;
    bool retried;
    bool reloaded;
    byte phase = IDLE;
    bool in_cs = false;

    {
    do
    :: atomic { rounds == ROUNDS -> running[me] = false; done++; printf("P%d: done\n", me) }; break
    :: atomic { rounds < ROUNDS ->
        /* SIGINT / SIGTERM / the caller's timeout arrived. A refresh in progress is never cut
         * short (it runs in a worker thread the exit waits for), so the only visible effect is
         * here: the process starts no new refresh and exits. */
        running[me] = false; done++;
        printf("P%d: SIGTERM: exits, starts no new refresh\n", me) }; break
    :: rounds < ROUNDS ->
        /* Between refreshes the process may have reloaded the account from pool.json (and the
         * keyring); otherwise it still holds the token of its last refresh or adoption. */
        atomic {
            rounds++;
            if
            :: skip
            :: seen = gen;
#ifdef CACHED_TOKEN
               reloaded = true;
#endif
               skip
            fi;
            printf("P%d: decides to refresh (its token is from gen %d)\n", me, seen)
        };
#ifdef CACHED_TOKEN
        /* (the keyring is read separately from pool.json: other processes may write between) */
        if
        :: reloaded -> mytok = secret
        :: else -> skip
        fi;
#endif

        /* Steps 1-4 are one indivisible step in the model. Once the lock is held, no other
         * process writes pool.json or the keyring, so splitting these reads would only add
         * interleavings that cannot differ; a kill between two reads loses nothing. */
        atomic {
            /* Step 1: take the account's refresh lock (blocking flock). */
#ifndef NO_LOCK
            lock == 0 -> lock = me + 1;
#endif
            incs++; in_cs = true;
#ifdef CACHED_TOKEN
            reloaded = false;
#endif
#ifndef NO_LOCK
            printf("P%d: takes the lock\n", me);
#else
            printf("P%d: starts refreshing (no lock!)\n", me);
#endif
            assert(!P4_mutual_exclusion || incs <= 1);

            /* Step 2: re-read pool.json. If the generation moved since this process got its
             * token, another process rotated while we waited for the lock: take its token, no
             * network call (calling would rotate again for nothing). pool/refresh.py also stops
             * here when the account is already marked needs-reauth. */
            if
#ifndef NO_GEN_RECHECK
            :: gen != seen -> seen = gen; REMEMBER(secret);
               printf("P%d: gen is %d: adopts rt_%d, no call\n", me, gen, secret);
               goto release
#endif
            :: needs_reauth -> printf("P%d: already needs-reauth, no call\n", me); goto release
            :: else -> skip
            fi;

            /* Step 3: read the refresh token from the keyring -- not the copy this process
             * loaded earlier: a process killed after step 9 but before step 10 stored a newer
             * token without moving gen. */
#ifndef CACHED_TOKEN
            tok = secret;
#else
            tok = mytok;    /* mutant: present the token loaded before deciding to refresh */
#endif

            /* Step 4: is there a journal entry? Then an earlier refresh was interrupted (its
             * owner was killed, or its call had an unknown outcome). Remember it: it explains
             * a revocation, should one follow. */
            f_owner = j_owner; f_from = j_from; f_unknown = j_unknown;
            explained[me] = ENTRY_EXPLAINS;
            assert(!P5_generation_matches_secret || j_owner == 0 || j_from == gen);
            if
            :: j_owner == 0 -> printf("P%d: reads rt_%d; no journal entry\n", me, tok)
            :: else -> printf("P%d: reads rt_%d; journal entry {P%d, from gen %d, unknown outcome %d}\n",
                              me, tok, j_owner - 1, j_from, j_unknown)
            fi
        };

step5:
        /* Step 5: journal entry {owner = me, from_gen = gen} BEFORE sending: if we die from
         * now on, whoever comes next knows a request may have rotated the token. */
        atomic {
#ifndef SPEC_NO_WAIT
            /* FIX (not in the specification, see README "Findings"): first wait until the
             * interrupted request found at step 4 can no longer reach the provider. Its owner
             * sent it and then died or gave up; if the provider handled it AFTER our own
             * request, it would present a used token and revoke the login behind our back, and
             * no journal entry would explain it. The code would record when the request was
             * sent and sleep until that time plus the token-request timeout (assuming the
             * provider never acts on an older request); the model waits until that request
             * has left the network. */
            (f_owner == 0 || inflight[f_owner - 1] == 0) ->
#endif
#ifndef JOURNAL_AFTER_SEND
            j_owner = me + 1; j_from = gen; j_unknown = false;
            printf("P%d: journal := {P%d, from gen %d}\n", me, me, gen)
#else
            skip
#endif
        };

        /* Step 6: send the refresh-token grant. */
        atomic {
            /* (model simplification: one request per client in flight. Only SPEC_NO_WAIT can
             * reach a send while the client's own timed-out request is still on the wire; it
             * then waits here for that one to be handled first.) */
            inflight[me] == 0 ->
            assert(!P6_single_flight || seen == gen);
            inflight[me] = tok;
            printf("P%d: sends rt_%d\n", me, tok)
        };
#ifdef JOURNAL_AFTER_SEND
        atomic { j_owner = me + 1; j_from = gen; j_unknown = false;    /* mutant: too late */
                 printf("P%d: journal := {P%d, from gen %d}\n", me, me, gen) }
#endif

        /* Step 7 happens in the endpoint process below. Step 8: the answer (each branch
         * below takes one kind of answer), or a timeout. */
        if
        :: atomic { ans[me] == A_NEW -> newtok = ans_tok[me]; ans[me] = A_NONE; ans_tok[me] = 0;
                    printf("P%d: receives rt_%d\n", me, newtok) };
#ifndef GEN_BEFORE_SECRET
            /* Step 9: the new refresh token goes to the keyring first ... */
            atomic { secret = newtok; holding_new[me] = false; phase = STORED;
                     printf("P%d: keyring := rt_%d\n", me, newtok) };
            /* Step 10: ... then pool.json: gen + 1 and the journal entry cleared, in one
             * update. From here on nobody will present the old token. */
            atomic {
#ifndef NO_GEN_BUMP
                gen++;
#endif
                j_owner = 0; j_from = 0; j_unknown = false;
                seen = gen; REMEMBER(newtok); phase = IDLE;
                printf("P%d: pool.json: gen := %d, journal cleared\n", me, gen)
            }
#else
            /* mutant: pool.json first (gen + 1, journal cleared), keyring second */
            atomic { gen++; j_owner = 0; j_from = 0; j_unknown = false; phase = BUMPED;
                     printf("P%d: pool.json: gen := %d, journal cleared\n", me, gen) };
            atomic { secret = newtok; holding_new[me] = false;
                     seen = gen; REMEMBER(newtok); phase = IDLE;
                     printf("P%d: keyring := rt_%d\n", me, newtok) }
#endif

        :: atomic { ans[me] == A_5XX -> ans[me] = A_NONE; printf("P%d: receives 5xx\n", me) };
            /* Transient error: the provider did nothing; back off (release, try later). */
#ifndef SPEC_5XX_CLEARS_JOURNAL
            /* FIX (see README "Findings"): put back the journal exactly as step 4 found it.
             * Clearing it would erase an earlier interrupted refresh's entry, and the next
             * process would present the used token with no explanation. */
            atomic { j_owner = f_owner; j_from = f_from; j_unknown = f_unknown;
                     printf("P%d: journal put back as step 4 found it\n", me) }
#else
            atomic { j_owner = 0; j_from = 0; j_unknown = false;     /* as specified */
                     printf("P%d: journal cleared\n", me) }
#endif

        :: atomic { ans[me] == A_NONE && faults < FAULTS ->
                    /* No answer in time. The outcome is unknown: the provider may have rotated
                     * (or may still do so: the request can still be on the wire). An answer
                     * arriving later is thrown away. */
                    faults++; abandoned[me] = true;
                    printf("P%d: token request times out (outcome unknown)\n", me) };
#ifndef TIMEOUT_CLEARS_JOURNAL
            /* leave our journal entry, marked "outcome unknown", so the next refresh knows a
             * revocation may follow and why */
            atomic { j_unknown = true; printf("P%d: journal entry marked outcome-unknown\n", me) }
#else
            atomic { j_owner = 0; j_from = 0; j_unknown = false;      /* mutant */
                     printf("P%d: journal cleared\n", me) }
#endif

        :: atomic { ans[me] == A_INVALID -> ans[me] = A_NONE;
                    printf("P%d: receives invalid_grant\n", me) };
            /* invalid_grant: re-read the keyring once. A different token there was written by
             * someone else (outside our lock discipline) and may still be good: retry steps
             * 5-10 with it. In the correct model every writer holds the lock, so the retry is
             * never taken; SPIN lists it as unreached code, which is itself a useful fact. */
            if
            :: atomic { secret != tok && !retried -> retried = true; tok = secret;
                        printf("P%d: keyring holds rt_%d: retries with it\n", me, tok) };
               goto step5
            :: atomic { else ->
                /* the login is dead: mark needs-reauth (saying "a refresh was interrupted when
                 * process P was killed" / "had an unknown outcome" if step 4 found an entry)
                 * and clear the journal: the explanation now lives in the account's error */
                needs_reauth = true; j_owner = 0; j_from = 0; j_unknown = false;
                printf("P%d: marks needs-reauth; explained by a killed/unknown refresh: %d\n",
                       me, explained[me]);
                assert(!P3_every_revocation_explained || (revoked && explained[me]));
#ifdef CHECK_BLAME
                /* P7 (a finding, see README): the process the explanation names is one whose
                 * rotation was actually lost. It does NOT hold: step 5 overwrites the entry of
                 * an interrupted refresh, so a later kill before sending takes the blame. */
                assert(!P7_blame_names_the_loser || (f_owner != 0 && lost_by[f_owner - 1]));
#endif
                skip }
            fi

#ifdef SIGNAL_ABORTS
        :: atomic { ans[me] == A_NONE ->
                    /* mutant (the old code): SIGINT/SIGTERM aborts the refresh while the
                     * request is out; the `finally` releases the lock, the process exits */
                    gone[me] = true; rounds = ROUNDS;
                    printf("P%d: SIGTERM aborts the refresh, exits\n", me) };
           goto release
#endif
        fi;

release:
        /* Step 11: release the lock (also reached from `goto release` above). */
        atomic {
            QUIESCENT_CHECKS;
#ifndef NO_LOCK
            lock = 0;
#endif
            incs--; in_cs = false; phase = IDLE;
            printf("P%d: releases the lock\n", me);
            /* forget this refresh's locals (SPIN would otherwise count states that differ
             * only in leftovers nobody reads again) */
            tok = 0; newtok = 0; retried = false;
            f_owner = 0; f_from = 0; f_unknown = false;
            if      /* (a timed-out request may still be on the wire: keep its explanation) */
            :: inflight[me] == 0 -> explained[me] = false
            :: else -> skip
            fi;
            if
            :: gone[me] -> running[me] = false; done++
            :: else -> skip
            fi
        };
        if
        :: gone[me] -> break
        :: else -> skip
        fi
    od
    } unless { dead[me] };

    /* SIGKILL: the process is gone. The OS releases its flock; its memory (including a new
     * token received but not yet stored) is lost; what it wrote to the stores stays. */
    if
    :: dead[me] ->
        atomic {
            printf("P%d: SIGKILLed (the OS releases its lock)\n", me);
#ifndef LOCK_SURVIVES_CRASH
            if
            :: lock == me + 1 -> lock = 0
            :: else -> skip
            fi;
#endif
            if
            :: holding_new[me] -> lost = true; LOST_BY(me); holding_new[me] = false
            :: else -> skip
            fi;
            if
            :: phase == STORED -> missed_bumps++
            :: else -> skip
            fi;
            if
            :: in_cs -> incs--; in_cs = false; QUIESCENT_CHECKS
            :: else -> skip
            fi;
            done++
        }
    :: else -> skip
    fi
}

/* =============================================================================================
 * The provider's token endpoint (step 7). It takes requests off the network in any order.
 * ============================================================================================= */

/* Hand the answer to client P -- unless P can no longer receive it. */
inline deliver(P)
{
    if
    :: dead[P] || abandoned[P] ->
        /* a killed or timed-out client never stores a new token: that rotation is lost */
        if
        :: kind == A_NEW -> lost = true; LOST_BY(P)
        :: else -> skip
        fi;
        printf("endpoint: (P%d is dead or gave up: nobody gets this answer)\n", P);
        abandoned[P] = false
    :: else ->
        if
        :: gone[P] -> skip      /* mutant SIGNAL_ABORTS: nobody listens, nobody knows */
        :: else ->
            ans[P] = kind;
            if
            :: kind == A_NEW -> ans_tok[P] = issued; holding_new[P] = true
            :: else -> skip
            fi
        fi
    fi
}

inline handle(P)
{
    t = inflight[P]; inflight[P] = 0;
    if
    :: faults < FAULTS ->                  /* transient failure: nothing happens */
        faults++; kind = A_5XX;
        printf("endpoint: rt_%d from P%d: 5xx, nothing done\n", t, P)
    :: revoked -> kind = A_INVALID;         /* the login is dead */
        printf("endpoint: rt_%d from P%d: invalid_grant (login revoked)\n", t, P)
    :: !revoked && t == issued ->           /* the newest token, unused: rotate */
        issued++; kind = A_NEW;
        printf("endpoint: rt_%d from P%d: rotates, issues rt_%d\n", t, P, issued)
    :: !revoked && t != issued ->           /* a used token: reuse, revoke the whole login */
        assert(!P1_no_reuse_unless_rotation_lost || lost);
        revoked = true; kind = A_INVALID;
        printf("endpoint: rt_%d from P%d: REUSE of a used token: the login is revoked\n", t, P)
    fi;
    deliver(P);
    t = 0; kind = A_NONE        /* forget the leftovers */
}

active proctype endpoint()
{
    byte t, kind;
end_idle:                                   /* waiting for requests is a fine place to stop */
    do
    :: atomic { inflight[0] != 0 -> handle(0) }
    :: atomic { inflight[1] != 0 -> handle(1) }
#if N >= 3
    :: atomic { inflight[2] != 0 -> handle(2) }
#endif
    od
}

/* =============================================================================================
 * SIGKILL / power loss: may hit any running client at any moment, at most CRASHES times.
 * ============================================================================================= */
#ifndef NO_LOCK
#define KILLABLE(p) (lock == p + 1 && !dead[p] && !gone[p])
#else
#define KILLABLE(p) (running[p] && !dead[p] && !gone[p])
#endif
active proctype sigkill()
{
end_idle:
    do
    :: atomic { crashes < CRASHES && KILLABLE(0) -> dead[0] = true; crashes++ }
    :: atomic { crashes < CRASHES && KILLABLE(1) -> dead[1] = true; crashes++ }
#if N >= 3
    :: atomic { crashes < CRASHES && KILLABLE(2) -> dead[2] = true; crashes++ }
#endif
    od
}

/* =============================================================================================
 * The end of a run: every client finished and nothing is left on the wire. A late request
 * handled after the last lock release must not leave an unexplained or lost state behind.
 * ============================================================================================= */
#if N >= 3
#define WIRE_EMPTY (inflight[0] == 0 && inflight[1] == 0 && inflight[2] == 0)
#else
#define WIRE_EMPTY (inflight[0] == 0 && inflight[1] == 0)
#endif
active proctype final_check()
{
end_wait:
    atomic { done == N && WIRE_EMPTY -> QUIESCENT_CHECKS }
}
