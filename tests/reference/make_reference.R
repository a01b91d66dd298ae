# Reference fixtures from lme4 / lmerTest / performance for tests/test_reference_lme4.py.
#
#   uv run python tests/reference/make_inputs.py   # frozen input CSVs (synthetic data, simulations)
#   Rscript tests/reference/make_reference.R        # writes tests/reference/lme4_<case>.json
#
# Run from the repository root. Tests never call R; they read the committed JSON files.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(performance)
  library(jsonlite)
})

dir <- "tests/reference"
dat <- file.path(dir, "data")
write.csv(lme4::sleepstudy, file.path(dat, "sleepstudy.csv"), row.names = FALSE)
write.csv(lme4::Penicillin, file.path(dat, "penicillin.csv"), row.names = FALSE)

read_case <- function(name) read.csv(file.path(dat, name), stringsAsFactors = FALSE)

fixture <- function(case, m, data_file, notes = "") {
  cf <- summary(m)$coefficients            # lmerTest: Satterthwaite df and p
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  re <- do.call(rbind, lapply(split(re, re$grpvar), function(d) {
    lv <- head(unique(as.character(d$grp)), 3)
    d[as.character(d$grp) %in% lv, ]
  }))
  ic <- tryCatch(performance::icc(m), error = function(e) NULL)
  r2 <- tryCatch(performance::r2_nakagawa(m), error = function(e) NULL)
  out <- list(
    case = case,
    data = data_file,
    formula = paste(deparse(formula(m), width.cutoff = 500), collapse = ""),
    reml = isREML(m),
    notes = notes,
    nobs = nobs(m),
    ngroups = as.list(ngrps(m)),
    fixef = data.frame(term = rownames(cf), estimate = cf[, "Estimate"],
                       std_error = cf[, "Std. Error"], df = cf[, "df"],
                       statistic = cf[, "t value"], p_value = cf[, "Pr(>|t|)"],
                       row.names = NULL),
    varcorr = data.frame(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov,
                         sdcor = vc$sdcor),
    sigma = sigma(m),
    theta = unname(getME(m, "theta")),
    theta_names = names(getME(m, "theta")),
    loglik = as.numeric(logLik(m)),
    reml_criterion = if (isREML(m)) REMLcrit(m) else NA,
    deviance = if (isREML(m)) NA else deviance(m),
    aic = AIC(m),
    bic = BIC(m),
    is_singular = isSingular(m, tol = 1e-4),
    ranef = data.frame(grpvar = re$grpvar, term = re$term, level = as.character(re$grp),
                       estimate = re$condval, cond_sd = re$condsd, row.names = NULL),
    icc_adjusted = if (is.null(ic) || all(is.na(ic))) NA else ic$ICC_adjusted,
    icc_unadjusted = if (is.null(ic) || all(is.na(ic))) NA else ic$ICC_unadjusted,
    r2_marginal = if (is.null(r2) || all(is.na(r2))) NA else unname(r2$R2_marginal),
    r2_conditional = if (is.null(r2) || all(is.na(r2))) NA else unname(r2$R2_conditional)
  )
  out
}

write_fixture <- function(x, case) {
  writeLines(toJSON(x, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE),
             file.path(dir, paste0("lme4_", case, ".json")))
}

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
cases <- list()

# 1. sleepstudy: correlated random slope, REML (REML criterion 1743.628, Days df 17)
ss <- read_case("sleepstudy.csv")
m_ss <- lmer(Reaction ~ Days + (Days | Subject), ss, REML = TRUE, control = ctrl)
cases$sleepstudy_slope <- fixture("sleepstudy_slope", m_ss, "sleepstudy.csv")

# 2. sleepstudy: random intercept, ML
m_ss_ml <- lmer(Reaction ~ Days + (1 | Subject), ss, REML = FALSE, control = ctrl)
cases$sleepstudy_intercept_ml <- fixture("sleepstudy_intercept_ml", m_ss_ml, "sleepstudy.csv")

# 3. sleepstudy: uncorrelated intercept and slope (||)
m_ss_uc <- lmer(Reaction ~ Days + (Days || Subject), ss, REML = TRUE, control = ctrl)
cases$sleepstudy_uncorrelated <- fixture("sleepstudy_uncorrelated", m_ss_uc, "sleepstudy.csv")

# 4. the shipped synthetic data: pre/post with technique interaction and random slope
pp <- read_case("prepost.csv")
pp$technique <- factor(pp$technique,
                       levels = c("direct_pressure", "stretching", "massage", "combined"))
pp$technique <- droplevels(pp$technique)
m_pp <- lmer(value ~ post * technique + session_number + (post | patient_id), pp,
             REML = TRUE, control = ctrl)
cases$prepost <- fixture("prepost", m_pp, "prepost.csv",
                         "study.frame('pain_nrs') restricted to treatment visits")

# 5. unbalanced with missing readings and a missing covariate (rows dropped by na.omit)
ub <- read_case("unbalanced.csv")
m_ub <- lmer(y ~ post * arm + age + (post | id), ub, REML = TRUE, control = ctrl)
cases$unbalanced <- fixture("unbalanced", m_ub, "unbalanced.csv")

# 6. singular: no group variation at all
sg <- read_case("singular.csv")
m_sg <- lmer(y ~ x + (x | g), sg, REML = TRUE, control = ctrl)
cases$singular <- fixture("singular", m_sg, "singular.csv")

# 7. patients nested in therapists, random patient slope
ns <- read_case("nested.csv")
ns$technique <- factor(ns$technique, levels = c("direct_pressure", "stretching", "massage"))
m_ns <- lmer(value ~ post * technique + session_number + (1 | therapist_id) + (post | patient_id),
             ns, REML = TRUE, control = ctrl)
cases$nested_slope <- fixture("nested_slope", m_ns, "nested.csv")

# 8. nested intercepts written with '/', ML
m_nsl <- lmer(value ~ post + (1 | therapist_id/patient_id), ns, REML = FALSE, control = ctrl)
cases$nested_slash_ml <- fixture("nested_slash_ml", m_nsl, "nested.csv")

# 9. crossed random intercepts (lme4's Penicillin)
pen <- read_case("penicillin.csv")
m_pen <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), pen, REML = TRUE, control = ctrl)
cases$penicillin_crossed <- fixture("penicillin_crossed", m_pen, "penicillin.csv")

for (nm in names(cases)) write_fixture(cases[[nm]], nm)

# Likelihood-ratio test (lme4's anova refits REML fits by ML) and profile CIs of the variance
# parameters of the sleepstudy slope model.
a <- anova(lmer(Reaction ~ Days + (1 | Subject), ss, control = ctrl), m_ss, refit = TRUE)
ci <- confint(m_ss, parm = "theta_", method = "profile", oldNames = FALSE)
extra <- list(
  anova = data.frame(npar = a$npar, aic = a$AIC, bic = a$BIC, loglik = a$logLik,
                     deviance = a$deviance, chisq = a$Chisq, df = a$Df,
                     p_value = a$`Pr(>Chisq)`),
  profile_ci = data.frame(parameter = rownames(ci), ci_low = ci[, 1], ci_high = ci[, 2],
                          row.names = NULL),
  anova_prepost = {
    t3 <- anova(m_pp, type = 3)
    data.frame(term = rownames(t3), num_df = t3$NumDF, den_df = t3$DenDF, statistic = t3$`F value`,
               p_value = t3$`Pr(>F)`)
  }
)
# Kenward-Roger (pbkrtest through lmerTest): t tests of each coefficient and the type III anova
kr <- function(m) {
  cf <- summary(m, ddf = "Kenward-Roger")$coefficients
  data.frame(term = rownames(cf), estimate = cf[, "Estimate"], std_error = cf[, "Std. Error"],
             df = cf[, "df"], statistic = cf[, "t value"], p_value = cf[, "Pr(>|t|)"],
             row.names = NULL)
}
extra$kenward_roger <- list(sleepstudy_slope = kr(m_ss), unbalanced = kr(m_ub),
                            nested_slope = kr(m_ns))
t3kr <- anova(m_ub, type = 3, ddf = "Kenward-Roger")
extra$anova_unbalanced_kr <- data.frame(term = rownames(t3kr), num_df = t3kr$NumDF,
                                        den_df = t3kr$DenDF, statistic = t3kr$`F value`,
                                        p_value = t3kr$`Pr(>F)`)
t3krn <- anova(m_ns, type = 3, ddf = "Kenward-Roger")
extra$anova_nested_kr <- data.frame(term = rownames(t3krn), num_df = t3krn$NumDF,
                                    den_df = t3krn$DenDF, statistic = t3krn$`F value`,
                                    p_value = t3krn$`Pr(>F)`)
writeLines(toJSON(extra, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE),
           file.path(dir, "lme4_sleepstudy_tests.json"))

if (file.exists("tests/reference/make_reference_marginal.R")) {
  source("tests/reference/make_reference_marginal.R")
}
