# Reference fixtures from lme4's glmer (+ emmeans, performance) for tests/test_reference_glmer.py.
#
#   Rscript tests/reference/make_reference_glmer.R     # from the repository root
#
# Writes tests/reference/glmer_<case>.json and the input data tests/reference/data/glmer_<case>.csv
# (cbpp and a VerbAgg subset from lme4; simulated data seeded here; the synthetic paresthesia
# frame built from data/synthetic exactly as mfr_outcomes.fit_binary builds it). Tests never call
# R; they read the committed files. Every fit uses a tight optimiser so that the fixture is the
# optimum, not where a default tolerance stopped.
suppressPackageStartupMessages({
  library(lme4)
  library(emmeans)
  library(performance)
  library(jsonlite)
})

dir <- "tests/reference"
dat <- file.path(dir, "data")
tight <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)
criterion <- "glmerControl(optimizer = 'bobyqa', optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)"

fixture <- function(case, m, data_file, notes = "", extra = list()) {
  cf <- summary(m)$coefficients
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  re <- do.call(rbind, lapply(split(re, re$grpvar), function(d) {
    lv <- head(unique(as.character(d$grp)), 4)
    d[as.character(d$grp) %in% lv, ]
  }))
  out <- list(
    case = case,
    data = data_file,
    formula = paste(deparse(formula(m), width.cutoff = 500), collapse = ""),
    family = family(m)$family,
    link = family(m)$link,
    nagq = m@devcomp$dims[["nAGQ"]],
    control = criterion,
    notes = notes,
    lme4_version = as.character(packageVersion("lme4")),
    nobs = nobs(m),
    ngroups = as.list(ngrps(m)),
    fixef = data.frame(term = rownames(cf), estimate = cf[, 1], std_error = cf[, 2],
                       statistic = cf[, 3], p_value = cf[, 4], row.names = NULL),
    vcov = unname(as.matrix(vcov(m))),
    vcov_rx = unname(as.matrix(suppressWarnings(vcov(m, use.hessian = FALSE)))),
    varcorr = data.frame(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov,
                         sdcor = vc$sdcor),
    theta = unname(getME(m, "theta")),
    theta_names = names(getME(m, "theta")),
    minus2loglik = -2 * as.numeric(logLik(m)),
    loglik = as.numeric(logLik(m)),
    deviance = deviance(m),
    aic = AIC(m),
    bic = BIC(m),
    df_resid = df.residual(m),
    is_singular = isSingular(m, tol = 1e-4),
    ranef = data.frame(grpvar = re$grpvar, term = re$term, level = as.character(re$grp),
                       estimate = re$condval, cond_sd = re$condsd, row.names = NULL),
    fitted_head = unname(head(fitted(m), 10)),
    predict_link_head = unname(head(predict(m, type = "link"), 10))
  )
  out <- c(out, extra)
  write_json(out, file.path(dir, paste0("glmer_", case, ".json")), digits = NA, auto_unbox = TRUE,
             pretty = TRUE, na = "null")
  cat("wrote", case, "\n")
}

perf <- function(m) {
  ic <- tryCatch(performance::icc(m), error = function(e) NULL)
  r2 <- tryCatch(suppressWarnings(performance::r2_nakagawa(m)), error = function(e) NULL)
  list(icc_adjusted = if (is.null(ic)) NA else ic$ICC_adjusted,
       icc_unadjusted = if (is.null(ic)) NA else ic$ICC_unadjusted,
       r2_marginal = if (is.null(r2)) NA else unname(r2$R2_marginal),
       r2_conditional = if (is.null(r2)) NA else unname(r2$R2_conditional))
}

# ---- cbpp: binomial with trials, (1 | herd), nAGQ 1, 10, 25 --------------------------------
cbpp_df <- transform(lme4::cbpp, prop = incidence / size)
write.csv(cbpp_df, file.path(dat, "glmer_cbpp.csv"), row.names = FALSE)
for (q in c(1, 10, 25)) {
  m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp_df, binomial,
             nAGQ = q, control = tight)
  fixture(paste0("cbpp_nagq", q), m, "glmer_cbpp.csv",
          "cbind(incidence, size - incidence); identical to prop ~ period with weights = size")
}

m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp_df, binomial,
           nAGQ = 0, control = tight)
fixture("cbpp_nagq0", m, "glmer_cbpp.csv", "nAGQ = 0: beta estimated inside PIRLS")

# ---- logistic model with a correlated random slope (simulated) -----------------------------
set.seed(20261)
G <- 60; per <- 12
g <- rep(sprintf("g%02d", 1:G), each = per)
x <- round(rnorm(G * per), 3)
trt <- rep(sample(c("a", "b"), G, replace = TRUE), each = per)
S <- matrix(c(1.0, 0.3, 0.3, 0.4), 2); L <- chol(S)
b <- matrix(rnorm(2 * G), G) %*% L
eta <- -0.3 + 0.8 * x + 0.5 * (trt == "b") + b[match(g, sprintf("g%02d", 1:G)), 1] +
  b[match(g, sprintf("g%02d", 1:G)), 2] * x
slope_df <- data.frame(y = rbinom(G * per, 1, plogis(eta)), x = x, trt = trt, g = g)
write.csv(slope_df, file.path(dat, "glmer_slope.csv"), row.names = FALSE)
m <- glmer(y ~ x + trt + (x | g), slope_df, binomial, control = tight)
fixture("slope", m, "glmer_slope.csv", "simulated, seed 20261")

# ---- the synthetic paresthesia model (data/synthetic, built as fit_binary builds it) --------
pat <- read.csv("data/synthetic/patients.csv", stringsAsFactors = FALSE)
ses <- read.csv("data/synthetic/sessions.csv", stringsAsFactors = FALSE)
mea <- read.csv("data/synthetic/measurements.csv", stringsAsFactors = FALSE)
par <- mea[mea$measure == "paresthesia" & mea$phase == "pre", c("session_id", "value")]
par <- merge(par, ses[, c("session_id", "patient_id", "session_number", "technique",
                          "adverse_event")], by = "session_id")
par <- par[par$technique != "none", ]
par$technique <- factor(par$technique,
                        levels = c("direct_pressure", "stretching", "massage", "combined"))
par$technique <- droplevels(par$technique)
par <- par[order(par$patient_id, par$session_number), ]
write.csv(par, file.path(dat, "glmer_paresthesia.csv"), row.names = FALSE)
m <- glmer(value ~ technique + session_number + (1 | patient_id), par, binomial, control = tight)
emm <- emmeans(m, ~ technique, type = "response")
emm_df <- as.data.frame(summary(emm, infer = TRUE))
emm_link <- as.data.frame(summary(emmeans(m, ~ technique), infer = TRUE))
prs <- as.data.frame(summary(pairs(emmeans(m, ~ technique), type = "response", reverse = TRUE,
                                   adjust = "none"), infer = TRUE))
fixture("paresthesia", m, "glmer_paresthesia.csv",
        "pre-session paresthesia on treatment visits of data/synthetic", c(
  list(emmeans_response = data.frame(technique = as.character(emm_df$technique),
                                     prob = emm_df$prob, se = emm_df$SE,
                                     lcl = emm_df$asymp.LCL, ucl = emm_df$asymp.UCL,
                                     z = emm_df$z.ratio, p = emm_df$p.value),
       emmeans_link = data.frame(technique = as.character(emm_link$technique),
                                 emmean = emm_link$emmean, se = emm_link$SE,
                                 lcl = emm_link$asymp.LCL, ucl = emm_link$asymp.UCL),
       pairs_response = data.frame(contrast = as.character(prs$contrast),
                                   odds_ratio = prs$odds.ratio, se = prs$SE,
                                   lcl = prs$asymp.LCL, ucl = prs$asymp.UCL,
                                   z = prs$z.ratio, p = prs$p.value)),
  perf(m)))
m1 <- glmer(value ~ technique + session_number + (1 | patient_id), par, binomial,
            nAGQ = 10, control = tight)
fixture("paresthesia_nagq10", m1, "glmer_paresthesia.csv", "as paresthesia, nAGQ = 10")
ae <- ses[ses$technique != "none", ]
ae$event <- as.integer(ae$adverse_event != "none")
ae$technique <- droplevels(factor(ae$technique,
                                  levels = c("direct_pressure", "stretching", "massage", "combined")))
ae <- ae[order(ae$patient_id, ae$session_number), c("session_id", "patient_id", "session_number",
                                                  "technique", "event")]
write.csv(ae, file.path(dat, "glmer_adverse.csv"), row.names = FALSE)
m <- glmer(event ~ technique + (1 | patient_id), ae, binomial, control = tight)
fixture("adverse", m, "glmer_adverse.csv", "adverse event (any) per treatment session")

# ---- a Poisson model with an offset (grouseticks-like counts, simulated) ------------------
set.seed(20262)
G <- 40; per <- 6
site <- rep(sprintf("s%02d", 1:G), each = per)
height <- round(rnorm(G * per, 0, 1), 3)
year <- factor(rep(c("y1", "y2", "y3"), length.out = G * per))
exposure <- round(runif(G * per, 0.5, 4), 2)
u <- rnorm(G, 0, 0.7)
mu <- exposure * exp(0.4 - 0.6 * height + 0.3 * (year == "y2") - 0.2 * (year == "y3") +
                     u[match(site, sprintf("s%02d", 1:G))])
pois_df <- data.frame(ticks = rpois(G * per, mu), height = height, year = year,
                      exposure = exposure, site = site)
write.csv(pois_df, file.path(dat, "glmer_poisson.csv"), row.names = FALSE)
m <- glmer(ticks ~ height + year + offset(log(exposure)) + (1 | site), pois_df, poisson,
           control = tight)
fixture("poisson", m, "glmer_poisson.csv", "simulated, seed 20262; offset(log(exposure))",
        perf(m))

# ---- crossed binomial: a VerbAgg subset, (1 | id) + (1 | item) ----------------------------
va <- lme4::VerbAgg
keep <- levels(va$id)[1:120]
va <- droplevels(va[va$id %in% keep, ])
va_df <- data.frame(r2 = as.integer(va$r2 == "Y"), Anger = va$Anger, Gender = va$Gender,
                    btype = va$btype, situ = va$situ, id = as.character(va$id),
                    item = as.character(va$item))
write.csv(va_df, file.path(dat, "glmer_verbagg.csv"), row.names = FALSE)
m <- glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), va_df, binomial,
           control = tight)
fixture("verbagg", m, "glmer_verbagg.csv", "lme4::VerbAgg, first 120 respondents")

# ---- probit and cloglog links on cbpp -----------------------------------------------------
for (lk in c("probit", "cloglog")) {
  m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp_df,
             binomial(link = lk), control = tight)
  fixture(paste0("cbpp_", lk), m, "glmer_cbpp.csv", paste("link", lk))
}
