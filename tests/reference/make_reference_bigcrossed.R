# Reference fixtures from lme4 / lmerTest for tests/test_sparse_ldl.py: crossed models whose second
# grouping factor is too large for the dense trailing block of the "sparse" engine (over 4,000
# columns), fitted by the "sparse_ldl" engine.
#
#   Rscript tests/reference/make_reference_bigcrossed.R   # from the repository root
#
# The data (simulated here with R's seeded RNG) go to tests/reference/data/bigcrossed.csv.gz, the
# fits to tests/reference/bigcrossed_<case>.json. Tests never call R.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

dir <- "tests/reference"
dat <- file.path(dir, "data")
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

# 300 sites, 15 therapists and about 17 patients a site (5,000 patients, 4,500 therapists). A
# patient has 3 sessions with pre and post readings, each session with a therapist of the
# patient's site (the home therapist with probability 0.5, else any of the site's): patients and
# therapists are crossed within sites.
set.seed(2026)
n_site <- 300; ther_per_site <- 15; n_pat <- 5000; n_sess <- 3
site <- rep(seq_len(n_site), length.out = n_pat)
home <- (site - 1) * ther_per_site + sample.int(ther_per_site, n_pat, replace = TRUE)
b0 <- rnorm(n_pat, 0, 1.0)
b1 <- rnorm(n_pat, 0, 0.5)
bt <- rnorm(n_site * ther_per_site, 0, 0.6)
pid <- rep(seq_len(n_pat), each = 2 * n_sess)
sess <- rep(rep(seq_len(n_sess), each = 2), n_pat)
post <- rep(0:1, n_pat * n_sess)
other <- (site[pid] - 1) * ther_per_site + sample.int(ther_per_site, length(pid), replace = TRUE)
sw <- rep(runif(n_pat * n_sess) < 0.5, each = 2)  # one therapist a session
ther <- ifelse(sw, other, home[pid])
value <- 6 + b0[pid] + bt[ther] + (-1.5 + b1[pid]) * post - 0.1 * sess +
  rnorm(length(pid), 0, 0.8)
d <- data.frame(patient_id = sprintf("P%04d", pid), therapist_id = sprintf("T%04d", ther),
                session_number = sess, post = post, value = round(value, 3))
file <- "bigcrossed.csv.gz"
con <- gzfile(file.path(dat, file), "w")
write.csv(d, con, row.names = FALSE)
close(con)
d <- read.csv(file.path(dat, file), stringsAsFactors = FALSE)  # exactly what the tests read

fixture <- function(case, m, secs) {
  cf <- summary(m)$coefficients            # lmerTest: Satterthwaite df and p
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  re <- do.call(rbind, lapply(split(re, re$grpvar), function(x) {
    lv <- head(unique(as.character(x$grp)), 5)
    x[as.character(x$grp) %in% lv, ]
  }))
  list(
    case = case, data = file,
    formula = paste(deparse(formula(m), width.cutoff = 500), collapse = ""),
    reml = isREML(m), optimizer = "bobyqa, rhoend = 1e-10", fit_seconds = secs,
    n_evaluations = m@optinfo$feval,
    nobs = nobs(m), ngroups = as.list(ngrps(m)),
    fixef = data.frame(term = rownames(cf), estimate = cf[, "Estimate"],
                       std_error = cf[, "Std. Error"], df = cf[, "df"], row.names = NULL),
    varcorr = data.frame(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov,
                         sdcor = vc$sdcor),
    sigma = sigma(m), theta = unname(getME(m, "theta")),
    loglik = as.numeric(logLik(m)),
    criterion = if (isREML(m)) REMLcrit(m) else deviance(m),
    ranef = data.frame(grpvar = re$grpvar, term = re$term, level = as.character(re$grp),
                       estimate = re$condval, cond_sd = re$condsd, row.names = NULL)
  )
}

run_case <- function(case, formula, reml = TRUE) {
  secs <- system.time(m <- lmer(as.formula(formula), d, REML = reml, control = ctrl))[["elapsed"]]
  writeLines(toJSON(fixture(case, m, secs), digits = NA, auto_unbox = TRUE, na = "null",
                    pretty = TRUE),
             file.path(dir, paste0("bigcrossed_", case, ".json")))
}

run_case("intercepts", "value ~ post + session_number + (1 | patient_id) + (1 | therapist_id)")
run_case("intercepts_ml",
         "value ~ post + session_number + (1 | patient_id) + (1 | therapist_id)", reml = FALSE)
run_case("slope", "value ~ post + session_number + (post | patient_id) + (1 | therapist_id)")
